"""Typed dependency aliases (full-stack-fastapi-template style).

The accessors are `async def` on purpose: they do no I/O, and FastAPI runs a sync dependency
in the thread pool (a thread hop per dependency per request)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.batcher import SubmitBatcher
from service.broker import Broker, Dispatcher
from service.db.repo import JobRepo
from service.db.session import Database
from service.settings import Settings
from service.studies import Studies


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_db(request: Request) -> Database:
    return request.app.state.db


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.db.session() as session:
        yield session


async def get_repo(request: Request) -> JobRepo:
    return request.app.state.repo


async def get_broker(request: Request) -> Broker:
    return request.app.state.broker


async def get_studies(request: Request) -> Studies:
    return request.app.state.studies


async def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


@dataclass(frozen=True, slots=True)
class Services:
    """What the submit route uses, as one dependency: FastAPI resolves each dependency (and its
    own `Request` parameter) on every request, a measurable share of a submit's CPU."""

    repo: JobRepo
    broker: Broker
    dispatcher: Dispatcher
    batcher: SubmitBatcher
    settings: Settings


async def get_services(request: Request) -> Services:
    state = request.app.state
    return Services(state.repo, state.broker, state.dispatcher, state.batcher, state.settings)


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_db)]
SessionDep = Annotated[Session, Depends(get_session)]
RepoDep = Annotated[JobRepo, Depends(get_repo)]
BrokerDep = Annotated[Broker, Depends(get_broker)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
ServicesDep = Annotated[Services, Depends(get_services)]
StudiesDep = Annotated[Studies, Depends(get_studies)]
