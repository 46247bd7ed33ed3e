"""The chat domain: rooms, members, names, history and limits, free of Twisted and Autobahn."""
