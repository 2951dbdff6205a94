"""Framework adapters: audit tools of agent frameworks without changing the tools.

Each adapter imports its framework lazily (it is an optional extra), e.g.
`from wakeline.producers.adapters.langchain import audit_tools`.
"""
