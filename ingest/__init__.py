"""The stream contract every other package builds on: readings, writer, consumer-group runner."""
