"""zorba on Flower: the shared protocol core (zorba.server.Server, zorba.client.run_round) run as a
Flower ServerApp / ClientApp over the Message API, in simulation (Ray) or deployment (SuperLink +
SuperNodes). Imported lazily: flwr and ray are only needed when this subpackage is used."""
