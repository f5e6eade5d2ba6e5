"""Config loading: TOML < env < flags, validation naming the bad key."""

from __future__ import annotations

import argparse

import pytest

from node.cli import build_parser
from node.cli.start import build_config
from node.config import ConfigError, NodeConfig, load_config


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["start", *argv])


def test_toml_then_env_then_flags(tmp_path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('name = "from-toml"\ntags = ["a"]\n[net]\nrecord_ttl = 30\nbootstrap = []\n[expert]\nadapters = { math = "/m" }\n')
    env = {"MOSAIC_NAME": "from-env", "MOSAIC_NET__ANNOUNCE_INTERVAL": "5", "MOSAIC_NET__MDNS": "true", "HOME_UNRELATED": "x"}
    config = build_config(_args("--config", str(path), "--tags", "x,y", "--adapter", "code=/c", "--no-http", "--data-dir", str(tmp_path)), env=env)
    assert config.name == "from-env"  # env beats TOML
    assert config.tags == ["x", "y"]  # flags beat TOML
    assert config.net.record_ttl == 30.0 and isinstance(config.net.record_ttl, float)
    assert config.net.announce_interval == 5.0 and config.net.mdns is True
    assert config.expert.adapters == {"math": "/m", "code": "/c"}
    assert config.http.enabled is False
    assert config.data_dir == str(tmp_path)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[net]\nrecord_ttl = -1\n", "net.record_ttl"),
        ("[net]\nlisten = ['not a multiaddr']\n", "net.listen"),
        ("[net]\nbootstrap = ['/ip4/127.0.0.1/tcp/4001']\n", "net.bootstrap"),
        ("[net]\nrecrod_ttl = 3\n", "net.recrod_ttl"),
        ("[expert]\nmax_batch = 0\n", "expert.max_batch"),
        ("[expert]\nmax_batch = 'eight'\n", "expert.max_batch"),
        ("[http]\nlisten = 'nowhere'\n", "http.listen"),
        ("name = ''\n", "name"),
        ("net = 3\n", "net"),
    ],
)
def test_bad_values_name_their_key(tmp_path, toml: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path, env={}).validate()


def test_bad_env_value_names_its_key() -> None:
    with pytest.raises(ConfigError, match=r"net\.mdns"):
        load_config(env={"MOSAIC_NET__MDNS": "perhaps"})


def test_bad_adapter_flag_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="expert.adapters"):
        build_config(_args("--adapter", "nopath", "--data-dir", str(tmp_path)), env={})


def test_defaults_validate() -> None:
    config = NodeConfig().validate()
    assert config.data_path.name == ".mosaic"
    assert config.net.record_ttl > config.net.announce_interval


def test_start_takes_the_data_dir_from_the_environment_unless_a_flag_says_otherwise():
    from node.cli import build_parser
    from node.cli.start import build_config

    env = {"MOSAIC_DATA_DIR": "/srv/mosaic"}
    assert build_config(build_parser().parse_args(["start"]), env=env).data_dir == "/srv/mosaic"
    flagged = build_parser().parse_args(["start", "--data-dir", "/tmp/elsewhere"])
    assert build_config(flagged, env=env).data_dir == "/tmp/elsewhere"
