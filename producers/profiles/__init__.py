"""Device profiles: how the payloads of one kind of firmware become readings, labels and units.

Each profile is chosen per topic pattern in the bridge's routes (`producers.routes`). A profile
decodes one message already matched to its route; everything it writes keeps the stream
contract, and everything it cannot use is dropped or refused with the reason.
"""
