"""A FastAPI app rate limited by sluice.asgi: 60 requests a minute per client address, and
at most 3 messages a minute to each user.

    PYTHONPATH=build/release/python /usr/bin/python3 examples/fastapi/app.py      # 127.0.0.1:8000
    PYTHONPATH=build/release/python /usr/bin/python3 -m uvicorn --app-dir examples/fastapi app:app

PORT sets the port of the first form. See README.md here for curl lines.
"""

import os

import uvicorn
from fastapi import FastAPI

import sluice
from sluice.asgi import RateLimitMiddleware, Rule, path_param

limiter = sluice.Limiter("memory://", {"per-client": "60/1m", "messages": "3/1m"})

app = FastAPI(title="sluice example")
app.add_middleware(
    RateLimitMiddleware,
    limiter=limiter,
    rules=[
        Rule("per-client"),  # every request, keyed by the client's address
        Rule("messages", path="/users/{user_id}/messages", methods=["POST"],
             key=path_param("user_id")),  # keyed by the user, whoever sends
    ],
)


@app.get("/")
async def index() -> dict:
    """Returns a greeting."""
    return {"hello": "world"}


@app.post("/users/{user_id}/messages")
async def send_message(user_id: str) -> dict:
    """Returns an acknowledgement of a message to `user_id`."""
    return {"user": user_id, "sent": True}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
