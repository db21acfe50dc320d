"""Safety instrumentation: judges of query harm, refusal and answer harm behind one batched protocol."""
