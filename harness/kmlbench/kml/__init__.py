"""KML's user-space library binding and the offline trainer."""
