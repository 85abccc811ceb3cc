"""`tournament up` on a fresh machine: Ray 2.60's `ray start --head` with token auth refuses to
start without a token, and a fresh home has no ~/.ray/auth_token (this failed the nightly
benchmark on a reset machine). flows.services.ensure_ray_token makes one, like `ray
get-auth-token --generate`, and leaves a given token alone."""
from __future__ import annotations

import stat

from flows.services import ensure_ray_token, ray_token_path


def test_fresh_home_gets_a_private_token(tmp_path):
    env = {"HOME": str(tmp_path)}
    written = ensure_ray_token(env)
    assert written == tmp_path / ".ray" / "auth_token" == ray_token_path(env)
    token = written.read_text()
    assert len(token) == 64 and int(token, 16) >= 0            # 256 random bits, hex
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert ensure_ray_token(env) is None and written.read_text() == token   # kept


def test_given_tokens_are_left_alone(tmp_path):
    assert ensure_ray_token({"HOME": str(tmp_path), "RAY_AUTH_TOKEN": "abc"}) is None
    assert not (tmp_path / ".ray").exists()
    own = tmp_path / "tok"
    own.write_text("mine")
    env = {"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(own)}
    assert ensure_ray_token(env) is None and own.read_text() == "mine"
    empty = tmp_path / "empty"
    env["RAY_AUTH_TOKEN_PATH"] = str(empty)
    assert ensure_ray_token(env) == empty and len(empty.read_text()) == 64
