"""The Hydra configs (conf/) and the checks of every entry point's composed config before it runs."""

from pathlib import Path

from zf_lightning.utils.errors import MissingInputError


def config_dir() -> str:
    """The repository's conf/ in a source checkout or editable install, the packaged copy in a wheel."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parent / "conf", package / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise MissingInputError(f"zf-lightning's Hydra configs were not found next to {package}")
