"""Rendering: compiled flows to ovs-ofctl text and JSON, pipeline declarations to docs."""
