"""The model card of a contributed LoRA adapter: ``mosaic-card.json`` beside the weights.

It travels inside the adapter directory (so inside its CID): what the adapter is for
(description, tags), which base it needs (id, sha256, UnixFS CID: merging refuses
adapters of different bases), what it was trained on (file name, sha256, size), how
(settings) and how well (held-out scores before and after).  ``README.md`` renders
the same facts for people.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ...atomic import staged_directory

CARD_FILE = "mosaic-card.json"
# What an adapter directory holds besides the card and README: nothing else is published.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_MAX_CARD_BYTES = 256 * 1024


class CardError(ValueError):
    """An adapter's card is missing fields or is not JSON."""


def read_card(directory: str | Path) -> dict[str, Any] | None:
    """The card of an adapter directory, or None when it has none (a hand-made adapter)."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        return None
    if path.stat().st_size > _MAX_CARD_BYTES:
        raise CardError(f"{path}: card over {_MAX_CARD_BYTES} bytes")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CardError(f"{path}: not a JSON card: {exc}") from None
    if not isinstance(card, dict):
        raise CardError(f"{path}: the card must be a JSON object")
    return card


def base_identity(card: dict[str, Any] | None) -> str | None:
    """What two adapters must share to be merged: the base's CID, else its sha256."""
    if not card or not isinstance(card.get("base"), dict):
        return None
    base = card["base"]
    return base.get("cid") or base.get("sha256")


def write_card(directory: str | Path, card: dict[str, Any]) -> None:
    directory = Path(directory)
    (directory / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (directory / "README.md").write_text(render_readme(card), encoding="utf-8")


def render_readme(card: dict[str, Any]) -> str:
    base = card.get("base", {})
    lines = [f"# {card.get('name', 'adapter')}", "", card.get("description", "") or "(no description)", "",
             f"- tags: {', '.join(card.get('tags', [])) or '-'}",
             f"- base: {base.get('model_id', '?')} (cid {base.get('cid') or '-'}, sha256 {base.get('sha256', '?')})",
             f"- kind: {card.get('kind', 'lora')}"]
    data = card.get("data")
    if data:
        lines.append(f"- data: {data.get('file')} ({data.get('kind')}, {data.get('examples')} examples, "
                     f"{data.get('size_bytes')} bytes, sha256 {data.get('sha256')})")
    if card.get("settings"):
        lines.append("- settings: " + ", ".join(f"{k}={v}" for k, v in sorted(card["settings"].items())))
    if card.get("merge"):
        lines.append("- merge: " + json.dumps(card["merge"], sort_keys=True))
    scores = card.get("scores") or {}
    if scores:
        lines += ["", "| held-out | n | accuracy | loss |", "|---|---|---|---|"]
        for when in ("before", "after"):
            s = scores.get(when)
            if s:
                lines.append(f"| {when} | {s.get('n')} | {s.get('accuracy')} | {s.get('loss')} |")
        if scores.get("split"):
            lines.append(f"\nheld-out items: {scores['split']}")
    return "\n".join(lines) + "\n"


def save_adapter(peft_model: Any, out_dir: Path, card: dict[str, Any], *, model_id: str,
                 adapter_name: str = "default") -> None:
    """Write the adapter (safetensors) and its card to ``out_dir`` atomically (temp dir + rename)."""
    with staged_directory(Path(out_dir), overwrite=True, private=True) as staging:
        peft_model.save_pretrained(str(staging), safe_serialization=True, selected_adapters=[adapter_name])
        nested = staging / adapter_name
        if adapter_name != "default" and nested.is_dir():  # peft nests non-default adapters
            for f in nested.iterdir():
                os.replace(f, staging / f.name)
            nested.rmdir()
        config_path = staging / "adapter_config.json"
        config = json.loads(config_path.read_text())
        # peft writes the local cache path here; a peer needs the base's name, not our disk layout.
        config["base_model_name_or_path"] = model_id
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
        for f in staging.iterdir():
            if f.name not in ADAPTER_FILES:
                f.unlink()
        write_card(staging, card)
        os.chmod(staging, 0o755)  # staged private; an adapter is meant to be shared
        for f in staging.iterdir():
            os.chmod(f, 0o644)
