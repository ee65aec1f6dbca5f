"""The only code that touches redis-py's connections: the client factory, Lua scripts, the XADD
writer, the parser of stream replies' bytes, and the translation of redis-py's errors into
`ingest.errors`. Everything it relies on beyond redis-py's documented API is checked at start
(`internals`)."""
