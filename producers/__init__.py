"""Ways readings enter the stream: the MQTT bridge."""
