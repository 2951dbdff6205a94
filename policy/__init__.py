"""Policy: what may run, decided before a tool runs (rules over reversibility, impact, tool
names, arguments and who asks), and the approvals and standing grants that authorize what a
rule holds for a human. Importable by the SDK: needs neither PostgreSQL nor faust."""
