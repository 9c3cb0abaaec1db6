"""ship/rightsize"""
