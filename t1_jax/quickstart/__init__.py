"""The quickstart's synthetic reasoning-retrieval task (``task``) and its small tokenizer (``tokenizer``)."""
