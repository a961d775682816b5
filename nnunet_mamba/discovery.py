"""Where our nnU-Net trainers live and whether nnU-Net's own lookup finds them.

nnU-Net (>= 2.8) searches folders listed in ``nnUNet_extTrainer`` (os.pathsep separated) after its own
package; our trainers are installed as the folder of the ``nnunet_mamba_trainers`` package.
"""
from __future__ import annotations

import ast
import contextlib
import io
import os
import shlex
from pathlib import Path

ENV_VAR = "nnUNet_extTrainer"


def trainers_folder() -> Path:
    """The folder holding our trainer modules: the installed package, else the source tree's ``trainers/``."""
    try:
        import nnunet_mamba_trainers

        return Path(nnunet_mamba_trainers.__path__[0]).resolve()
    except ImportError:
        source_tree = Path(__file__).resolve().parent.parent / "trainers"
        if source_tree.is_dir():
            return source_tree
        raise RuntimeError("cannot find the nnunet-mamba trainers folder: reinstall with `pip install nnunet-mamba`")


def _configured_paths(value: str | None = None) -> list[str]:
    value = os.environ.get(ENV_VAR, "") if value is None else value
    return [p for p in value.split(os.pathsep) if p.strip()]


def is_configured() -> bool:
    """True when ``nnUNet_extTrainer`` lists our trainers folder."""
    ours = trainers_folder()
    return any(Path(p).resolve() == ours for p in _configured_paths() if os.path.exists(p))


def export_line() -> str:
    """The shell line that makes nnU-Net find our trainers, keeping other folders already listed."""
    ours = str(trainers_folder())
    paths = [ours] + [p for p in _configured_paths() if os.path.exists(p) and Path(p).resolve() != Path(ours)]
    return f"export {ENV_VAR}={shlex.quote(os.pathsep.join(paths))}"


def require_configured(command: str) -> None:
    """Raise a clear error when nnU-Net could not find our trainers from ``command``."""
    if is_configured():
        return
    current = os.environ.get(ENV_VAR)
    state = "is not set" if current is None else f"is {current!r}, which does not list {trainers_folder()}"
    raise RuntimeError(
        f"{command} needs nnU-Net to find the nnunet-mamba trainers, but {ENV_VAR} {state}.\n"
        f"Run this (or add it to your shell profile):\n    eval \"$(nnunet-mamba env)\"\n"
        f"which executes: {export_line()}")


def trainer_names() -> list[str]:
    """Names of the trainer classes defined in our trainers folder (read from source, nothing imported)."""
    names = []
    for module in sorted(trainers_folder().glob("*.py")):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        names += [node.name for node in tree.body if isinstance(node, ast.ClassDef) and node.name.startswith("nnUNetTrainer")]
    return names


def find_with_nnunet(trainer_name: str):
    """Look ``trainer_name`` up exactly as nnUNetv2_train/_predict do; returns (class or None, error text)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            return recursive_find_trainer_class_by_name(trainer_name), ""
    except Exception as error:  # nnU-Net raises RuntimeError; an import failure of a module raises anything
        return None, f"{type(error).__name__}: {error}"
