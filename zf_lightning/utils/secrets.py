"""Keep secrets (API keys, tokens, passwords) out of what a run writes: logged configs, summary.json, W&B.

`redact_secrets` replaces
- the value of every key whose name looks secret (api_key, apikey, token, secret, password, passwd,
  credential, private_key, access_key; any case, any nesting), and
- every string that contains the value of a secret-looking environment variable (WANDB_API_KEY,
  *_TOKEN, *SECRET*, *PASSWORD*, *API_KEY*, ...), wherever it comes from (an `${oc.env:...}` interpolation,
  an error message, a command-line override),
with "***". Hydra's own `.hydra/config.yaml` keeps interpolations unresolved, so `${oc.env:WANDB_API_KEY}`
is written there as such, never its value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"

# Key names that hold a secret. `token` only as a word of its own (hf_token, auth-token, token), so that
# e.g. a `tokenizer` setting is left alone.
SECRET_KEY_PATTERN = re.compile(
    r"api[_\-.]?key|secret|passw(or)?d|credential|private[_\-.]?key|access[_\-.]?key|(^|[_\-.])(auth)?tokens?($|[_\-.])",
    re.IGNORECASE,
)
# Environment variables whose values are secrets.
SECRET_ENV_PATTERN = re.compile(r"API_?KEY|TOKEN|SECRET|PASSW(OR)?D|CREDENTIAL|PRIVATE_?KEY|ACCESS_?KEY", re.IGNORECASE)
# Shorter values ("1", "true") would redact unrelated text; real keys and tokens are much longer.
MIN_SECRET_LENGTH = 8


def is_secret_key(name: Any) -> bool:
    """Whether a config key's name says it holds a secret (api_key, wandb_token, password, ...)."""
    return isinstance(name, str) and SECRET_KEY_PATTERN.search(name) is not None


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the secret-looking environment variables, longest first."""
    environ = os.environ if environ is None else environ
    values = {
        value
        for name, value in environ.items()
        if SECRET_ENV_PATTERN.search(name) and len(value or "") >= MIN_SECRET_LENGTH
    }
    return sorted(values, key=len, reverse=True)


def redact_secrets(container: Any, environ: Mapping[str, str] | None = None) -> Any:
    """A copy of `container` (dicts, lists, tuples, strings, scalars) with every secret replaced by "***".

    Strings of the form "key=value" (command-line overrides) whose key looks secret are redacted too.
    OmegaConf containers should be converted first (`OmegaConf.to_container(cfg, resolve=True)`).
    """
    return _redact(container, secret_env_values(environ))


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, Mapping):
        return {
            key: (REDACTED if is_secret_key(key) and item is not None else _redact(item, secrets))
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(item, secrets) for item in value)
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        key, equals, _ = value.partition("=")
        if equals and is_secret_key(key.strip().lstrip("+~")) and " " not in key.strip():
            return f"{key}={REDACTED}"
        return value
    return value
