"""API tokens stored in the database (only their sha256; the token itself is shown once)."""

from __future__ import annotations

import secrets

from sqlalchemy import select, update

from service.db.base import RepoBase, sha256_hex
from service.db.models import ApiToken, utcnow


class TokenRepo(RepoBase):
    """Issue, revoke and check API tokens."""

    def create_api_token(self, name: str) -> str:
        """Issue a token (returned once; only its sha256 is stored)."""
        token = "sgmim_" + secrets.token_urlsafe(32)
        with self.db.write() as s:
            s.add(ApiToken(token_hash=sha256_hex(token), name=name, created_at=utcnow()))
        return token

    def revoke_api_token(self, name: str) -> bool:
        with self.db.write() as s:
            return bool(
                s.execute(
                    update(ApiToken)
                    .where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
                    .values(revoked_at=utcnow())
                ).rowcount
            )

    def token_hash_active(self, token_hash: str) -> bool:
        with self.db.read() as s:
            return (
                s.execute(
                    select(ApiToken.name).where(
                        ApiToken.token_hash == token_hash, ApiToken.revoked_at.is_(None)
                    )
                ).first()
                is not None
            )

    def has_active_tokens(self) -> bool:
        with self.db.read() as s:
            return (
                s.execute(select(ApiToken.name).where(ApiToken.revoked_at.is_(None)).limit(1)).first()
                is not None
            )
