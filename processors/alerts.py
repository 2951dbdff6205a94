"""Alerts of the detectors, and the automatic quarantine their rules call for.

One incident -> one `Alert` (schemas/Alert.avsc), produced twice: on `<prefix>alerts` (what
operators and `wakeline tail --alerts` follow) and on the workflow's partition of
`<prefix>events`, keyed by the workflow id, so it is ledgered with the events it is about.
When the rule's action (`DetectionRules.action`, `docs/detection.md`) is `quarantine-workflow`,
`quarantine-run` or `quarantine-agent`, a `Quarantine` follows on the same partition of
`<prefix>events`, its `alert_id` the alert's event id, `by` = `wakeline-detector/<rule>`, its
reason the alert's detail; the compensator takes it from there like any other quarantine.
`quarantine-agent` quarantines the agent the incident names (its `agent` attribute) since the
rule's window began: every workflow it acted in since then is stopped and undone, and the
agent is refused everywhere until released (compensator/scopes.py); an incident naming no
agent quarantines the workflow instead.

`incident_outputs` is the one function every detector calls; it returns runner `Output`s
(processors/stream.py), so the runner produces them and commits only once they are delivered.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from wakeline.infra.detection import DetectionRules
from wakeline.infra.settings import Topics
from wakeline.schemas import cloudevents_headers, encode_event, new_event_id

from .stream import Output

#: the agent id the detectors' events carry
DETECTOR_AGENT = "wakeline-detector"
#: kinds of Alert.avsc the detectors use
KINDS = ("runaway_loop", "race")
#: action -> Quarantine scope
SCOPES = {"quarantine-workflow": "workflow", "quarantine-run": "run", "quarantine-agent": "agent"}
#: the most evidence ids one alert lists (the attributes carry the counts)
MAX_RELATED = 50

_SOURCE = f"wakeline://detector/{socket.gethostname()}"


def _envelope(type_name: str, rule: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "event_id": new_event_id(),
        "type": type_name,
        "time": time.time_ns() // 1000,
        "source": _SOURCE,
        "workflow_id": fields["workflow_id"],
        "run_id": fields.get("run_id") or str(uuid.uuid4()),
        "step_id": None,
        "agent_id": DETECTOR_AGENT,
        "tenant": fields.get("tenant"),
        "boundary": None,
        "parent_event_ids": [],
        "correlation_id": None,
        "principal": f"{DETECTOR_AGENT}/{rule}",
        "trace_id": None,
        "span_id": None,
    }


def incident_outputs(
    rule: str,
    kind: str,
    envelope: Mapping[str, Any],
    detail: str,
    related_event_ids: Sequence[str],
    attributes: Mapping[str, Any],
    *,
    topics: Topics,
    rules: DetectionRules,
    resource: str | None = None,
    partition: int | None = None,
    quarantine: bool = True,
) -> list[Output]:
    """The outputs of one incident of `rule`: the Alert on the alerts topic and on the
    workflow's events partition, then, if the rule's action says so (and `quarantine`), a
    Quarantine there too.

    `envelope` gives the incident's `workflow_id` (required), `run_id` and `tenant`;
    `partition` is the workflow's partition of the events topic when the caller knows it
    (else the producer's partitioner places the record by its key, as the SDK's does).
    `attributes` values are turned into text. The Alert is the first output, its event id
    is the Quarantine's `alert_id`."""
    related = list(dict.fromkeys(related_event_ids))
    attrs = {str(k): str(v) for k, v in attributes.items()}
    if len(related) > MAX_RELATED:  # keep the first and the newest; say how many there were
        attrs.setdefault("related_total", str(len(related)))
        related = related[: MAX_RELATED // 2] + related[-(MAX_RELATED // 2) :]
    action = rules.action(rule)
    scope = SCOPES.get(action) if quarantine else None
    alert = _envelope("Alert", rule, envelope)
    alert.update(
        parent_event_ids=related[-1:],
        kind=kind if kind in KINDS else "other",
        severity="error" if scope else "warning",
        detail=detail,
        detector=rule,
        resource=resource,
        related_event_ids=related,
        attributes={**attrs, "action": action if scope else "alert"},
    )
    since_us = None
    if scope == "agent":  # what the agent did since the rule's window began
        window = rules.rule(rule, agent=attrs.get("agent")).window_s
        since_us = int(alert["time"] - window * 1_000_000)
    return alert_outputs(alert, topics=topics, scope=scope, partition=partition, since_us=since_us)


def alert_outputs(
    alert: Mapping[str, Any],
    *,
    topics: Topics,
    scope: str | None = None,
    partition: int | None = None,
    since_us: int | None = None,
) -> list[Output]:
    """An Alert event's outputs: on the alerts topic and on its workflow's partition of the
    events topic, then, when `scope` is a quarantine scope (workflow, run), a Quarantine of
    that scope there too, caused by the alert. Every detector's incidents go out this way."""
    rule = str(alert.get("detector") or "detector")
    key = alert["workflow_id"].encode("utf-8", "surrogatepass")
    value = encode_event(alert)
    headers = cloudevents_headers(alert)
    events = topics.events
    out = [
        Output(topics.alerts, value, key, headers, tag=("alert", alert["event_id"])),
        Output(events, value, key, headers, partition, tag=("alert", alert["event_id"])),
    ]
    target = None
    if scope == "agent":
        target = (alert.get("attributes") or {}).get("agent") or None
        scope = "agent" if target else "workflow"
    if scope is not None:
        q = _envelope("Quarantine", rule, alert)
        q.update(
            parent_event_ids=[alert["event_id"]],
            scope=scope,
            reason=alert["detail"],
            by=f"{DETECTOR_AGENT}/{rule}",
            alert_id=alert["event_id"],
            tainted_event_ids=[],
            target=target,
            since=since_us if target else None,
        )
        out.append(
            Output(events, encode_event(q), key, cloudevents_headers(q), partition,
                   tag=("quarantine", q["event_id"]))
        )  # fmt: skip
    return out
