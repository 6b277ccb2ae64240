"""Curation: find near-duplicates, leaks between splits, personal data, suspect labels and low-quality rows;
write a curated copy and a report that lists every row removed or changed, with the reason."""
