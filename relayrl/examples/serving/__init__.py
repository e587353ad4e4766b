"""The seed-era policy server / client pair (cartpole_server.py, cartpole_client.py), run by tests."""
