"""Continual-learning methods: one file per method, each a `Method` subclass named in conf/method/."""
