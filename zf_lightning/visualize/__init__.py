"""Figures of the paper (Figs. 2 and 4-7): pictures only, from arrays the engines and analyses computed."""
