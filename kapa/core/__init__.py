"""The core layer: what every part shares and that imports nothing of Kapa above it (names, settings,
services, endpoint streams, logging). Pure, apart from reading a services file."""
