"""Sparkplug B: the protobuf payloads of `spBv1.0/...` and a host application's bookkeeping."""
