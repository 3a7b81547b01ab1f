# Included right after llama.cpp's project() (CMAKE_PROJECT_llama.cpp_INCLUDE, see the
# Makefile): llama-cpp-python's CMakeLists forces LLAMA_BUILD_COMMON on, but it loads only
# libllama, libggml* and libmtmd, and `common` (with cpp-httplib) is ~30% of the compile;
# mtmd does not need it. Tests, examples, tools and the server are off already when
# llama.cpp is a subproject.
set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama.cpp: build the common library" FORCE)
