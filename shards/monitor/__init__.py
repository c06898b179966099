"""`tally monitor`: borrowers' cash-flow profiles and alerts, from the change stream of the
books on NATS JetStream (consumer.py), joined per client transaction (join.py) into the flow
engine (core/flows), served as tally.v1.Monitor (server.py)."""
