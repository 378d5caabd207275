# Protocols, templates (early / late / hybrid / stages) and the parameter-free fusers.
list(APPEND fusion_test_sources test_combine.cpp)
