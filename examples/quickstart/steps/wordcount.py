"""Count words across the cleaned poems: a `python` stage of the quickstart example."""

import collections
import json


def count(ctx):
    """Write the `top` most common words of every file under the `texts` input as JSON,
    and return the number of distinct words as a computed value."""
    counter = collections.Counter()
    files = sorted(p for p in ctx.inputs["texts"].rglob("*") if p.is_file())
    for n, path in enumerate(files, 1):
        counter.update(path.read_text().split())
        ctx.progress(n, len(files))
    top = counter.most_common(ctx.params["top"])
    ctx.outputs["counts"].write_text(json.dumps(dict(top), indent=2) + "\n")
    ctx.log.info("counted %d words in %d files", sum(counter.values()), len(files))
    return {"distinct_words": len(counter)}
