"""A local Ray of this process that leaves the user's Ray settings alone."""
from __future__ import annotations

import os
import secrets
import sys


def use_private_auth_token() -> None:
    """Call before a local ``ray.init()`` (a new cluster of this process): token auth with a fresh token held only in
    this process's environment, which the cluster's processes inherit. Left alone, Ray 2.60 writes the token to
    ~/.ray/auth_token, and from then on every ``ray start --head`` of the user turns token auth on, which its
    ``ray job submit`` (mode "disabled" unless RAY_AUTH_MODE says "token") cannot pass. An auth mode or token the
    user set is kept."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if "RAY_AUTH_TOKEN" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # 256 bits, as `ray get-auth-token --generate`
    if "ray._raylet" in sys.modules:  # Ray read its config at import: refresh it, as Ray does when it turns token on
        from ray._raylet import Config

        Config.initialize("")
