"""A Cloudera ML style function: the request JSON object arrives as one dict."""


def predict(args):
    text = str(args.get("text", ""))
    return {"words": len(text.split()), "chars": len(text), "upper": text.upper()}
