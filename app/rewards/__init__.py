"""The reward server for RL loops and its clients: batched JSON scoring from the promoted (or a pinned) version.

`python -m app.rewards` serves `POST /v1/score`, `GET /v1/health` and `GET /v1/version` (`server.py`, schema in
`schema.py`, documented in docs/reward-server.md). `RewardClient` (`client.py`) calls one or several servers with
retries; `reward_fn` / `RewardFn` (`adapter.py`) wrap it in the `fn(images, prompts, metadata) -> (scores, info)`
shape of Flow-GRPO's reward functions. Importing this package loads neither torch nor the server.
"""

from app.rewards.adapter import RewardFn, reward_fn
from app.rewards.client import RewardClient, RewardError, RewardReply

__all__ = ["RewardClient", "RewardError", "RewardFn", "RewardReply", "reward_fn"]
