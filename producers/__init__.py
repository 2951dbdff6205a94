"""Agent-side SDK: tool registry, emitter, policy/quarantine gates, adapters (DESIGN §3, §8).

Never imports faust or the compensator: an agent that only emits events stays light.
"""
