"""The expert's signer of receipts (protocol/receipts.py) for results and sessions it served.

Signing happens where the result leaves the expert (LocalExpert's delivery on
the trio thread, and the session host at close), so a receipt covers exactly
the text and distributions that went out, under the node's peer key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec

from protocol import GenerateRequest, GenerateResult, Identity, SignedReceipt
from protocol.receipts import Receipt, prompt_digest, sign_receipt, text_digest


class Notary:
    """Signs receipts in the name of ``identity`` for the model ``model_cid``.

    ``adapter_cids`` maps adapter names to the CIDs the capability record
    announces (a live mapping: CIDs of adapters published after start appear);
    ``adapter_digests`` is the fallback, as in the record.
    """

    def __init__(self, identity: Identity, model_cid: str, adapter_cids: Mapping[str, str],
                 adapter_digests: Mapping[str, str]) -> None:
        self.identity = identity
        self.model_cid = model_cid
        self._adapter_cids = adapter_cids
        self._adapter_digests = adapter_digests

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def adapter_cid(self, adapter: str | None) -> str | None:
        if adapter is None:
            return None
        return self._adapter_cids.get(adapter) or self._adapter_digests.get(adapter)

    def sign(
        self,
        *,
        kind: Literal["generate", "session"],
        request_id: str,
        adapter: str | None,
        input_digest: str,
        output_digest: str,
        tokens: int,
    ) -> SignedReceipt:
        receipt = Receipt(kind=kind, request_id=request_id, peer_id=self.peer_id, model_cid=self.model_cid[:128],
                          adapter=adapter, adapter_cid=(self.adapter_cid(adapter) or "")[:128] or None,
                          input_digest=input_digest, output_digest=output_digest, tokens=tokens)
        return sign_receipt(receipt, self.identity)

    def sign_result(self, request: GenerateRequest, result: GenerateResult) -> GenerateResult:
        """``result`` with its receipt: the prompt as received, the text as sent."""
        receipt = self.sign(kind="generate", request_id=result.request_id, adapter=request.adapter,
                            input_digest=prompt_digest(request.prompt, request.messages),
                            output_digest=text_digest(result.text), tokens=result.usage.completion_tokens)
        return msgspec.structs.replace(result, receipt=receipt)
