"""Money: self-hosted $/Mtok from GPU time, provider price schedules replayed on a trace, flat-rate plans."""
