"""The distill process: trains a small student from images plus cached teacher features.

Never imports teacher code (featcache.teachers, open_clip): the teacher is not loaded here.
"""
