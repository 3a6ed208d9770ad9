"""The wire: what server and clients say to each other, and how it is written down. It owns the
protocol's messages and pure rules (protocol.py), the stream keys every seed is derived with
(keys.py), the compact binary codec (codec.py) and the round log on disk (logio.py). No torch, no
model: the lowest layer, it may import only itself and zorba.errors."""
