"""Sign a user in to a Cognito user pool and return their ID token: what `sagalocal token`, `make run` and the
tests use to call the API as a customer, on the embedded stack (moto's Cognito) and on any deployed one.

It works with an operator's (IAM) credentials, as a test harness does: the user is created if missing
(no invitation message), given a fresh random password, and signed in with ADMIN_USER_PASSWORD_AUTH, which
the app client allows for that purpose. Nothing is stored: the next sign-in sets another password.
"""

from __future__ import annotations

import secrets
import string
from typing import Any


def new_password() -> str:
    """A password every pool policy of the template accepts (upper, lower, digit, symbol, 24 characters)."""
    alphabet = string.ascii_letters + string.digits
    return ("Aa1-" + "".join(secrets.choice(alphabet) for _ in range(20)))


def sign_in(cognito: Any, pool_id: str, client_id: str, username: str) -> dict[str, Any]:
    """The user's tokens (IdToken, AccessToken, ExpiresIn) and their `sub`."""
    try:
        cognito.admin_create_user(UserPoolId=pool_id, Username=username, MessageAction="SUPPRESS")
    except cognito.exceptions.UsernameExistsException:
        pass
    password = new_password()
    cognito.admin_set_user_password(UserPoolId=pool_id, Username=username, Password=password, Permanent=True)
    result = cognito.admin_initiate_auth(UserPoolId=pool_id, ClientId=client_id, AuthFlow="ADMIN_USER_PASSWORD_AUTH",
                                         AuthParameters={"USERNAME": username, "PASSWORD": password})
    tokens = result["AuthenticationResult"]
    user = cognito.admin_get_user(UserPoolId=pool_id, Username=username)
    sub = next(a["Value"] for a in user["UserAttributes"] if a["Name"] == "sub")
    return {"IdToken": tokens["IdToken"], "AccessToken": tokens["AccessToken"],
            "ExpiresIn": tokens.get("ExpiresIn"), "sub": sub, "username": username}
