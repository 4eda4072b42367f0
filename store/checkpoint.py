"""Signed checkpoints: a head anchored outside the database.

The hash chain proves that no stored byte changed, but someone with write access can rewrite a
history and recompute every hash; the chain then verifies. A checkpoint is a statement of every
branch's ref (fork point, head seq and head id) and the event count, signed with an Ed25519 key
kept away from the store. ``check_checkpoint`` proves the log still extends it: each branch is
there with the same fork point, and the event at each signed head seq has the signed id (ids
chain, so that fixes every event before it). A rewritten history fails that, whatever hashes it
recomputed.

    sia keygen --out audit.key                      # audit.key (private) and audit.key.pub
    sia checkpoint --sign audit.key --out cp.json   # sign the store's heads
    sia verify --checkpoint cp.json --public-key audit.key.pub
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from store.errors import BranchNotFound, EventNotFound, StoreError
from store.files import atomic_write
from store.protocol import EventLog

__all__ = ["CheckpointError", "generate_key", "sign_checkpoint", "check_checkpoint", "FORMAT"]

FORMAT = "sia-checkpoint/1"


class CheckpointError(StoreError):
    """A key or checkpoint file that cannot be used: ``path`` and what is wrong with it."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def _canonical(statement: dict[str, Any]) -> bytes:
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def generate_key(out: str | Path) -> tuple[Path, Path]:
    """A new Ed25519 key: ``out`` (private, PKCS#8 PEM, mode 0600) and ``out.pub``. Refuses to
    overwrite a file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    priv_path, pub_path = Path(out), Path(f"{out}.pub")
    for p in (priv_path, pub_path):
        if p.exists():
            raise CheckpointError(str(p), "already exists; a key is never overwritten: choose another name")
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(priv_path, priv, mode=0o600, exclusive=True)  # never readable by others, not even while written
    priv_path.chmod(0o600)
    atomic_write(pub_path, pub, mode=0o666, exclusive=True)
    return priv_path, pub_path


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(str(path), f"cannot read the {what} ({e.strerror or e})") from None
    except ValueError as e:  # a name with a NUL byte
        raise CheckpointError(repr(str(path)), f"not a usable file name ({e})") from None


def _private_key(path: str | Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(_read(path, "private key"), password=None)
    except (ValueError, TypeError) as e:
        raise CheckpointError(str(path), f"not an unencrypted PEM private key ({e}); make one with `sia keygen`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(str(path), f"a {type(key).__name__}, not an Ed25519 key; make one with `sia keygen`")
    return key


def _public_key(path: str | Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(_read(path, "public key"))
    except (ValueError, TypeError) as e:
        raise CheckpointError(str(path), f"not a PEM public key ({e}); use the .pub file `sia keygen` wrote") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError(str(path), f"a {type(key).__name__}, not an Ed25519 public key")
    return key


def statement_of(log: EventLog, *, store: str = "") -> dict[str, Any]:
    return {
        "format": FORMAT,
        "store": store,
        "signed_at": datetime.now(UTC).isoformat(),
        "events": log.count(),
        "branches": [
            {"name": b.name, "base_branch": b.base_branch, "base_seq": b.base_seq, "base_id": b.base_id,
             "head_seq": b.head_seq, "head_id": b.head_id}
            for b in log.branches()
        ],
    }


def sign_checkpoint(log: EventLog, key_path: str | Path, out: str | Path, *, store: str = "") -> dict[str, Any]:
    """Sign the log's refs with the private key at ``key_path``; write the checkpoint to ``out``
    (never over an existing file) and return it."""
    key = _private_key(key_path)
    statement = statement_of(log, store=store)
    from cryptography.hazmat.primitives import serialization

    doc = {
        "statement": statement,
        "signature": key.sign(_canonical(statement)).hex(),
        "public_key": key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex(),
    }
    target = Path(out)
    try:
        atomic_write(target, json.dumps(doc, indent=1, sort_keys=True).encode("utf-8"), mode=0o666, exclusive=True)
    except FileExistsError:
        raise CheckpointError(str(target), "already exists; a checkpoint is never overwritten: choose another name") from None
    return doc


def check_checkpoint(log: EventLog, checkpoint: str | Path, public_key: str | Path) -> list[str]:
    """Problems found proving that ``log`` extends the signed checkpoint (empty: it does).
    Raises ``CheckpointError`` where the checkpoint cannot be trusted at all (unreadable, or its
    signature does not verify with ``public_key``)."""
    from cryptography.exceptions import InvalidSignature

    key = _public_key(public_key)
    try:
        doc = json.loads(_read(checkpoint, "checkpoint"))
        statement, signature = doc["statement"], bytes.fromhex(doc["signature"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(str(checkpoint), f"not a checkpoint `sia checkpoint` wrote ({type(e).__name__}: {e})") from None
    try:
        key.verify(signature, _canonical(statement))
    except InvalidSignature:
        raise CheckpointError(
            str(checkpoint), f"its signature does not verify with {public_key}: the checkpoint was altered, or signed with another key"
        ) from None
    if statement.get("format") != FORMAT:
        raise CheckpointError(str(checkpoint), f"format {statement.get('format')!r}, this engine reads {FORMAT!r}")
    problems: list[str] = []
    for b in statement["branches"]:
        name = b["name"]
        try:
            info = log.branch(name)
        except BranchNotFound:
            problems.append(f"branch {name!r} was signed but is not in the log")
            continue
        if (info.base_branch, info.base_seq, info.base_id) != (b["base_branch"], b["base_seq"], b["base_id"]):
            problems.append(f"branch {name!r} was signed forked from {b['base_branch']}#{b['base_seq']}, the log has it from "
                            f"{info.base_branch}#{info.base_seq}")
            continue
        seq, head = b["head_seq"], b["head_id"]
        if seq < 0:
            continue
        if info.head_seq < seq:
            problems.append(f"{name}#{seq} ({str(head)[:12]}) was signed, but the branch now ends at #{info.head_seq}: events were removed")
            continue
        try:
            found = log.at(name, seq).id
        except EventNotFound:
            found = "nothing"
        if found != head:
            problems.append(f"{name}#{seq} was signed as {head}, the log holds {found} there: the history was rewritten")
    if log.count() < int(statement["events"]):
        problems.append(f"{statement['events']} events were signed, the log holds {log.count()}")
    return problems
