"""zorba on Flower: the shared protocol core (zorba.federation.server.Server,
zorba.federation.client.run_round) run as a Flower ServerApp / ClientApp over the Message API, in
simulation (Ray) or deployment (SuperLink + SuperNodes). It may import zorba.methods,
zorba.federation and every layer below them. Imported lazily: flwr and ray are only needed when this
subpackage is used."""
