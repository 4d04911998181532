"""One model call the way a factory agent makes it: the openai SDK pointed at spendgate, its tags as
X-Spendgate-* headers, and the answer reduced to what the demo needs: the metered cost, or the budget refusal
and what it asks for."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, cast

import openai

BUDGET_CODES = ("budget_exceeded", "approval_required", "approval_denied")


@dataclass(frozen=True, slots=True)
class Tags:
    """The attribution of a call (DESIGN §4), sent as headers."""

    project: str
    agent: str
    station: str
    issue: str
    run: str | None = None
    retry_of: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {"X-Spendgate-Project": self.project, "X-Spendgate-Agent": self.agent,
                   "X-Spendgate-Station": self.station, "X-Spendgate-Issue": self.issue}
        if self.run:
            headers["X-Spendgate-Run"] = self.run
        if self.retry_of:
            headers["X-Spendgate-Retry-Of"] = self.retry_of
        return headers


@dataclass(frozen=True, slots=True)
class Answered:
    request_id: str
    cost: Decimal  # X-Spendgate-Cost-Usd: the metered cost, exact
    input_tokens: int
    output_tokens: int
    clamped: bool  # a budget shrank max_tokens (X-Spendgate-Max-Tokens-Clamped)
    warned: bool  # a soft budget is over (X-Spendgate-Budget-Warning)


@dataclass(frozen=True, slots=True)
class Refused:
    """A 402 from a budget: `budget_exceeded` (with the budget's name) or `approval_required` (with its id)."""

    code: str
    message: str
    budget: str | None
    window: str | None  # of that budget: run, hour, day, week, month, total
    approval_id: str | None


@dataclass(frozen=True, slots=True)
class Failed:
    status: int | None  # None: spendgate could not be reached or timed out
    message: str


Outcome = Answered | Refused | Failed


class Agent:
    """An OpenAI client on `<url>/v1` with the given key. One per worker thread; `close` when done."""

    def __init__(self, url: str, key: str, timeout: float = 120.0) -> None:
        # No SDK retries: a refusal must not be retried blindly, and a failure is counted as it happened.
        self._client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def models(self) -> list[str]:
        return [m.id for m in self._client.models.list()]

    def chat(self, model: str, messages: list[dict[str, Any]], max_tokens: int, tags: Tags) -> Outcome:
        try:
            raw = self._client.chat.completions.with_raw_response.create(
                model=model, messages=cast(Any, messages), max_tokens=max_tokens, extra_headers=tags.headers())
        except openai.APIStatusError as err:
            body = err.body if isinstance(err.body, dict) else {}
            message = str(body.get("message") or err.message)
            if err.status_code == 402 and body.get("code") in BUDGET_CODES:
                budget = body.get("budget")
                budget = budget if isinstance(budget, dict) else {}
                return Refused(str(body["code"]), message, budget.get("name"), budget.get("window"),
                               body.get("approval_id"))
            return Failed(err.status_code, message)
        except openai.APIConnectionError as err:  # includes timeouts
            return Failed(None, str(err))
        completion = raw.parse()
        usage = completion.usage
        return Answered(
            request_id=raw.headers.get("x-spendgate-request-id", ""),
            cost=_decimal(raw.headers.get("x-spendgate-cost-usd")),
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            clamped="x-spendgate-max-tokens-clamped" in raw.headers,
            warned="x-spendgate-budget-warning" in raw.headers,
        )


def _decimal(raw: str | None) -> Decimal:
    try:
        return Decimal(raw) if raw else Decimal(0)
    except InvalidOperation:
        return Decimal(0)
