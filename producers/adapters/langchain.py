"""LangChain adapter: every invocation of a `BaseTool` becomes an audited Wakeline call.

    from wakeline.producers.adapters.langchain import audit_tools
    tools = audit_tools([search, send_email], ctx)       # ctx: a WorkflowContext
    agent = create_agent(model, tools)                   # use them as before

`audit_tool` returns a new `BaseTool` with the same name, description, argument schema,
return mode and callbacks; the original tool is not modified. Invoking it runs the Wakeline
call path around the original tool's own `_run`/`_arun`: gates, intent (strict or relaxed per
the tool's spec), the tool, result. LangChain's input parsing and validation happen first, so
a validation error is not a tool call. A refusal raises the `GateRefused` subclass (LangChain
`handle_tool_error` does not catch it: it is not a `ToolException`).

`context` is a `WorkflowContext`, or a zero-argument callable returning one (for instance
reading a `contextvars.ContextVar`) so one tool object can serve many workflows.
Requires the `langchain` extra (`langchain-core`).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from pydantic import ConfigDict

from wakeline.producers.registry import ToolRegistry, ToolSpec
from wakeline.producers.workflow import WorkflowContext

ContextSource = WorkflowContext | Callable[[], WorkflowContext]
_NOT_ARGS = frozenset({"run_manager", "callbacks", "config"})


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _config_param(fn: Callable[..., Any]) -> str | None:
    try:
        from langchain_core.tools.base import _get_runnable_config_param
    except ImportError:  # pragma: no cover - older/newer layouts: tools then get no config
        return None
    return _get_runnable_config_param(fn)


class AuditedTool(BaseTool):
    """A LangChain tool that records every call of the tool it wraps."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    wrapped: BaseTool
    context: Any
    spec: ToolSpec

    def _ctx(self) -> WorkflowContext:
        ctx = self.context
        return ctx if isinstance(ctx, WorkflowContext) else ctx()

    def _audited_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if args:  # a plain string input, passed positionally by LangChain
            return {"input": args[0]} if len(args) == 1 else {"input": list(args)}
        filtered = kwargs
        filt = getattr(self.wrapped, "_filter_injected_args", None)
        if filt is not None:
            filtered = filt(kwargs)
        return {k: v for k, v in filtered.items() if k not in _NOT_ARGS}

    def _inner_kwargs(
        self, fn: Callable[..., Any], kwargs: dict[str, Any], run_manager: Any, config: Any
    ) -> dict[str, Any]:
        kw = dict(kwargs)
        if run_manager is not None and _accepts(fn, "run_manager"):
            kw["run_manager"] = run_manager
        param = _config_param(fn)
        if param is not None:
            kw[param] = config
        return kw

    def _run(
        self, *args: Any, config: RunnableConfig, run_manager: Any = None, **kwargs: Any
    ) -> Any:
        call = self._ctx().begin(self.spec, self._audited_args(args, kwargs))
        inner = self.wrapped._run
        started = time.perf_counter_ns()
        try:
            out = inner(*args, **self._inner_kwargs(inner, kwargs, run_manager, config))
        except BaseException as e:
            call.fail(e, (time.perf_counter_ns() - started) // 1000)
            raise
        call.ok(_result_of(out, self.response_format), (time.perf_counter_ns() - started) // 1000)
        return out

    async def _arun(
        self, *args: Any, config: RunnableConfig, run_manager: Any = None, **kwargs: Any
    ) -> Any:
        call = await self._ctx().abegin(self.spec, self._audited_args(args, kwargs))
        inner = self.wrapped._arun
        kw = self._inner_kwargs(inner, kwargs, run_manager, config)
        started = time.perf_counter_ns()
        try:
            out = await inner(*args, **kw)
        except BaseException as e:
            call.fail(e, (time.perf_counter_ns() - started) // 1000)
            raise
        call.ok(_result_of(out, self.response_format), (time.perf_counter_ns() - started) // 1000)
        return out


def _result_of(out: Any, response_format: str) -> Any:
    """What gets digested: the content (not the artifact) of `content_and_artifact` tools."""
    if response_format == "content_and_artifact" and isinstance(out, tuple) and len(out) == 2:
        return out[0]
    return out


def audit_tool(
    tool: BaseTool,
    context: ContextSource,
    *,
    spec: ToolSpec | None = None,
    registry: ToolRegistry | None = None,
) -> AuditedTool:
    """Wrap one tool. The spec: `spec`, else `registry` (default: the context's emitter's)."""
    if spec is None:
        if registry is None:
            ctx = context if isinstance(context, WorkflowContext) else None
            registry = ctx.emitter.registry if ctx is not None else ToolRegistry()
        spec = registry.get(tool.name)
    return AuditedTool(
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema,
        return_direct=tool.return_direct,
        verbose=tool.verbose,
        callbacks=tool.callbacks,
        tags=tool.tags,
        metadata=tool.metadata,
        handle_tool_error=tool.handle_tool_error,
        handle_validation_error=tool.handle_validation_error,
        response_format=tool.response_format,
        wrapped=tool,
        context=context,
        spec=spec,
    )


def audit_tools(
    tools: Iterable[BaseTool],
    context: ContextSource,
    *,
    registry: ToolRegistry | None = None,
) -> list[AuditedTool]:
    """Wrap several tools, each with its spec from the registry."""
    return [audit_tool(t, context, registry=registry) for t in tools]
