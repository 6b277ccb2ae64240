"""Probes that come with every report: forgetting (general knowledge and language) and counterfactual bias."""
