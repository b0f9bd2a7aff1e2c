"""User service (port 8081): registers customers -> ``UserCreated`` on ``user.profile.created``."""

from __future__ import annotations

from dataclasses import dataclass

from eventlab.commands import RegisterUser
from eventlab.errors import AlreadyExists
from eventlab.events import Event, UserCreated
from eventlab.services.runtime import Service

__all__ = ["SERVICE", "User", "evolve", "register"]


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    name: str
    email: str


def evolve(state: User | None, event: Event) -> User | None:
    match event:
        case UserCreated():
            return User(event.user_id, event.name, event.email)
    return state


def register(command: RegisterUser, state: User | None) -> list[Event]:
    """Decide on a registration: a user id is taken once.

    A repeat (the same id, name and email: a retry whose answer was lost) decides nothing; the same id
    with another name or email is refused.
    """
    if state is not None:
        if state != User(command.user_id, command.name, command.email):
            raise AlreadyExists("user_id", f"user {command.user_id} already exists with another name or email")
        return []
    return [UserCreated(user_id=command.user_id, name=command.name, email=command.email)]


SERVICE = Service(name="user", evolvers={"user": evolve})
