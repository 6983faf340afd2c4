"""Why a torch file cannot be loaded: corrupt bytes, or pickled objects whose loading would run code.

`torch.load(weights_only=True)` refuses both with the same error ("Weights only load failed"), so a
file of random bytes would be reported as a code-running pickle. `torch_file_problem` tells them apart
by reading the file's pickle opcodes with `pickletools`, which decodes the byte stream without building
any object (so nothing in the file runs), and without reading the tensor data of torch's zip format.

* corrupt: empty, truncated, random bytes, a damaged zip archive, a pickle stream that does not parse;
* unsafe: a well-formed pickle that imports something torch's weights-only loader does not allow
  (``posix.system``, ``builtins.print``, a class of the training script, ...), named in the message.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
import zipfile
from pathlib import Path

ZIP_MAGIC = b"PK\x03\x04"
MAX_PICKLES = 6  # torch's legacy format is 5 pickles (magic, protocol, sys info, objects, storage keys), then raw bytes
# Used when torch's own list (a private helper) is not available: what a plain state dict needs.
FALLBACK_ALLOWED = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                    "torch.FloatStorage", "torch.DoubleStorage", "torch.HalfStorage", "torch.BFloat16Storage",
                    "torch.LongStorage", "torch.IntStorage", "torch.BoolStorage", "torch.ByteStorage",
                    "torch.float32", "torch.float64", "torch.float16", "torch.bfloat16", "torch.int64"}


def allowed_globals() -> set[str]:
    """The `module.name` globals torch.load(weights_only=True) accepts, those a user added included."""
    allowed = set(FALLBACK_ALLOWED)
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed |= set(_get_allowed_globals())
    except Exception:  # a torch without the helper: the plain state-dict set
        pass
    from torch.serialization import get_safe_globals

    for entry in get_safe_globals():  # torch.serialization.add_safe_globals: objects or (object, "name")
        if isinstance(entry, tuple):
            allowed.add(entry[1])
        else:
            allowed.add(f"{getattr(entry, '__module__', '')}.{getattr(entry, '__qualname__', '')}")
    return allowed


def corrupt(path: Path, why: str) -> str:
    return (f"{path}: unreadable torch file: {why}; it is corrupt or truncated (nothing in it was executed): "
            "restore it from its source or save it again")


def unsafe(path: Path, names: list[str]) -> str:
    shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
    return (f"{path}: refused to load: the file holds pickled Python objects ({shown}), not only tensors, and "
            "loading it could run code (nothing was executed). If you trust its origin, re-save just the state "
            "dict (torch.save(model.state_dict(), ...)) or convert it to safetensors.")


def global_name(module: str, name: str = "") -> str:
    """`module.name` as Python 3 spells it (protocol 2 pickles say __builtin__, copy_reg, ...)."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def pickle_globals(stream: io.BufferedIOBase | io.BytesIO) -> list[str] | None:
    """The `module.name` globals one pickle imports, read from its opcodes (nothing is built or run);
    None if the stream does not hold one complete pickle."""
    found: list[str] = []
    strings: list[str] = []  # string operands in push order, for STACK_GLOBAL
    memo: dict[int, object] = {}
    top: object = None  # the value just pushed, if a string (for memo bookkeeping)
    try:
        for op, arg, _ in pickletools.genops(stream):
            name = op.name
            if name in ("GLOBAL", "INST"):
                found.append(global_name(*str(arg).split(" ", 1)))
                top = None
            elif name == "STACK_GLOBAL":
                found.append(global_name(strings[-2], strings[-1]) if len(strings) >= 2 else "(an unnamed global)")
                top = None
            elif name == "MEMOIZE":
                memo[len(memo)] = top
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = top
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                top = memo.get(int(arg))
                if isinstance(top, str):
                    strings.append(top)
            elif isinstance(arg, str) and ("UNICODE" in name or name.endswith("STRING")):
                top = str(arg)
                strings.append(top)
            else:
                top = None
    except Exception:  # unknown opcode, truncated argument, no STOP: not a (complete) pickle
        return None
    return found


def torch_file_problem(path: str | Path) -> str | None:
    """What is wrong with a torch file (`.pt`, `.pth`, `.bin`), told from its bytes without loading it:
    a message naming the file (corrupt, or unsafe with the globals it would import), or None if it looks
    like something torch.load(weights_only=True) can read."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
            if size == 0:
                return corrupt(path, "the file is empty (0 bytes)")
            if head == ZIP_MAGIC:
                return zip_problem(path)
            f.seek(0)
            return raw_pickle_problem(path, f)
    except OSError as e:
        return f"{path}: cannot be read ({e})"


def zip_problem(path: Path) -> str | None:
    """torch's format since 1.6: a zip archive whose `data.pkl` holds the object structure."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("data.pkl")]
            if not names:
                return corrupt(path, "a zip archive without torch's data.pkl, not a torch checkpoint")
            data = zf.read(names[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as e:
        return corrupt(path, f"a damaged or truncated zip archive ({e})")
    found = pickle_globals(io.BytesIO(data))
    if found is None:
        return corrupt(path, "its data.pkl is not a complete pickle")
    allowed = allowed_globals()
    bad = list(dict.fromkeys(g for g in found if g not in allowed))
    return unsafe(path, bad) if bad else None


def raw_pickle_problem(path: Path, f) -> str | None:
    """torch's legacy format (pickles, then raw tensor bytes) or a plain pickle file."""
    allowed = allowed_globals()
    bad: list[str] = []
    complete = 0
    for _ in range(MAX_PICKLES):
        found = pickle_globals(f)
        if found is None:
            break
        complete += 1
        bad += [g for g in found if g not in allowed]
        if not f.read(1):
            break
        f.seek(-1, io.SEEK_CUR)
    if not complete:
        return corrupt(path, "neither torch's zip format nor a pickle (random or damaged bytes)")
    return unsafe(path, list(dict.fromkeys(bad))) if bad else None


def load_error(path: str | Path, error: Exception) -> str:
    """The message for a torch file that torch.load(weights_only=True) failed on: corrupt or unsafe when the
    bytes tell which, else torch's own reason."""
    problem = torch_file_problem(path)
    if problem:
        return problem
    text = str(error).strip()
    reason = text.splitlines()[0][:200] if text else type(error).__name__
    return corrupt(Path(path), f"torch.load failed ({reason})")
