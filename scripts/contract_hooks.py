"""schemathesis hooks of scripts/contract: sign the fuzzer in as the run's admin, and make that admin again when a
fuzzed request deleted it.

Deleting one's own account is a legitimate request: the stateful phase follows `GET /me` (or `GET /users`) to
`DELETE /users/{id}` with the admin's own id. No request could then sign the fuzzer in again, so when signing in
is refused the account is made anew with `rust-app users create-admin`, as scripts/contract made it first.
"""

import os
import subprocess

import requests
import schemathesis

BASE_URL = os.environ["CONTRACT_BASE_URL"]
EMAIL = os.environ["CONTRACT_EMAIL"]
PASSWORD = os.environ["CONTRACT_PASSWORD"]
BINARY = os.environ["CONTRACT_BINARY"]
COOKIE = os.environ.get("SESSION_COOKIE_NAME", "rust_app_session")


def sign_in() -> requests.Response:
    body = {"email": EMAIL, "password": PASSWORD}
    return requests.post(f"{BASE_URL}/sessions", json=body, timeout=30)


def make_admin() -> None:
    command = [BINARY, "users", "create-admin", "--email", EMAIL, "--name", "Contract admin"]
    subprocess.run(command, input=f"{PASSWORD}\n", text=True, check=True, capture_output=True, timeout=60)


# Only the routes that take a session get it (the access table's SignedIn, OwnerOrAdmin and Admin routes):
# a session sent to POST /sessions or DELETE /sessions would be ended by that very request. A 401 (a fuzzed
# `DELETE /sessions?all=true` or password change ended the session) signs in again.
@schemathesis.auth(refresh_interval=300, retry_on=[401]).apply_to(path_regex=r"^/(users/|users$|me$|events)")
class AdminSession:
    def get(self, case, context):
        response = sign_in()
        if response.status_code == 401:
            make_admin()
            response = sign_in()
        response.raise_for_status()
        return response.cookies[COOKIE]

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
