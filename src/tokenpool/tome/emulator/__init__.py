"""A faithful TOME stand-in: real HTTP server, persistent SQLite vault, fault injection, ledger."""

from tokenpool.tome.emulator.app import create_app
from tokenpool.tome.emulator.faults import Faults
from tokenpool.tome.emulator.server import ServerTls, serve
from tokenpool.tome.emulator.vault import Vault

__all__ = ["Faults", "ServerTls", "Vault", "create_app", "serve"]
