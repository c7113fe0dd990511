"""The one-process demo: its building blocks (the embedded MQTT broker)."""
