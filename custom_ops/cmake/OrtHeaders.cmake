# Locates the ONNX Runtime C/C++ headers (onnxruntime_cxx_api.h & co.).
# Only headers are needed: the library is built with ORT_API_MANUAL_INIT and
# does not link libonnxruntime.
#
# Search order:
#   1. ORT_INCLUDE_DIR (CMake variable, else environment variable)
#   2. headers installed on the system (/usr[/local]/include[/onnxruntime],
#      CMAKE_PREFIX_PATH, ...)
#   3. Debian trixie's libonnxruntime-dev, downloaded into the build folder by
#      cmake/fetch_ort_headers.sh (no root, nothing installed on the system;
#      disable with -DNORMEXPORT_FETCH_ORT_HEADERS=OFF). Reused on re-configure.
#
# Sets:
#   NORMEXPORT_ORT_INCLUDE_DIR     directory holding onnxruntime_cxx_api.h, or ""
#   NORMEXPORT_ORT_HEADERS_SOURCE  "ORT_INCLUDE_DIR" | "system" | "debian-fetch" | ""
#   NORMEXPORT_ORT_API_VERSION     ORT_API_VERSION of those headers, or ""
#   NORMEXPORT_ORT_HEADERS_ERROR   why nothing was found (when not found)

option(NORMEXPORT_FETCH_ORT_HEADERS "Download Debian's libonnxruntime-dev headers into the build folder if needed" ON)

set(NORMEXPORT_ORT_INCLUDE_DIR "")
set(NORMEXPORT_ORT_HEADERS_SOURCE "")
set(NORMEXPORT_ORT_API_VERSION "")
set(NORMEXPORT_ORT_HEADERS_ERROR "")
set(_nx_ort_notes "")

# Sets ${out} to the directory holding the headers if `dir` (or dir/onnxruntime) has them.
function(_nx_ort_dir_with_headers dir out)
  set(${out} "" PARENT_SCOPE)
  foreach(cand "${dir}" "${dir}/onnxruntime")
    if(EXISTS "${cand}/onnxruntime_cxx_api.h" AND EXISTS "${cand}/onnxruntime_c_api.h")
      get_filename_component(cand "${cand}" ABSOLUTE)
      set(${out} "${cand}" PARENT_SCOPE)
      return()
    endif()
  endforeach()
endfunction()

# 1. explicit ORT_INCLUDE_DIR
set(_nx_ort_explicit "")
if(DEFINED ORT_INCLUDE_DIR AND NOT "${ORT_INCLUDE_DIR}" STREQUAL "")
  set(_nx_ort_explicit "${ORT_INCLUDE_DIR}")
elseif(DEFINED ENV{ORT_INCLUDE_DIR} AND NOT "$ENV{ORT_INCLUDE_DIR}" STREQUAL "")
  set(_nx_ort_explicit "$ENV{ORT_INCLUDE_DIR}")
endif()
if(_nx_ort_explicit)
  _nx_ort_dir_with_headers("${_nx_ort_explicit}" _nx_dir)
  if(_nx_dir)
    set(NORMEXPORT_ORT_INCLUDE_DIR "${_nx_dir}")
    set(NORMEXPORT_ORT_HEADERS_SOURCE "ORT_INCLUDE_DIR")
  else()
    message(WARNING "ORT_INCLUDE_DIR='${_nx_ort_explicit}' does not contain onnxruntime_cxx_api.h and "
                    "onnxruntime_c_api.h; looking elsewhere")
    string(APPEND _nx_ort_notes "ORT_INCLUDE_DIR='${_nx_ort_explicit}' has no onnxruntime headers. ")
  endif()
endif()

# 2. system headers
if(NOT NORMEXPORT_ORT_INCLUDE_DIR)
  find_path(NORMEXPORT_SYSTEM_ORT_INCLUDE_DIR onnxruntime_cxx_api.h
    HINTS /usr/include/onnxruntime /usr/local/include/onnxruntime /usr/include /usr/local/include
    PATH_SUFFIXES onnxruntime
    DOC "System directory holding onnxruntime_cxx_api.h")
  if(NORMEXPORT_SYSTEM_ORT_INCLUDE_DIR)
    _nx_ort_dir_with_headers("${NORMEXPORT_SYSTEM_ORT_INCLUDE_DIR}" _nx_dir)
    if(_nx_dir)
      set(NORMEXPORT_ORT_INCLUDE_DIR "${_nx_dir}")
      set(NORMEXPORT_ORT_HEADERS_SOURCE "system")
    endif()
  else()
    string(APPEND _nx_ort_notes "No onnxruntime headers on the system. ")
  endif()
endif()

# 3. Debian's libonnxruntime-dev, fetched into the build folder
if(NOT NORMEXPORT_ORT_INCLUDE_DIR)
  set(_nx_fetch_root "${CMAKE_BINARY_DIR}/_deps/ort-headers-debian")
  set(_nx_fetch_inc "${_nx_fetch_root}/root/usr/include/onnxruntime")
  _nx_ort_dir_with_headers("${_nx_fetch_inc}" _nx_dir)
  if(_nx_dir)
    message(STATUS "normexport: reusing ONNX Runtime headers fetched earlier: ${_nx_dir}")
  elseif(NOT NORMEXPORT_FETCH_ORT_HEADERS)
    string(APPEND _nx_ort_notes "Fetching Debian's libonnxruntime-dev is disabled (NORMEXPORT_FETCH_ORT_HEADERS=OFF). ")
  else()
    find_program(_nx_bash bash)
    find_program(_nx_apt_get apt-get)
    find_program(_nx_dpkg dpkg)
    if(NOT _nx_bash OR NOT _nx_apt_get OR NOT _nx_dpkg)
      string(APPEND _nx_ort_notes "Cannot fetch Debian's libonnxruntime-dev: bash, apt-get and dpkg are needed. ")
    else()
      message(STATUS "normexport: downloading Debian trixie libonnxruntime-dev headers into ${_nx_fetch_root}")
      execute_process(
        COMMAND "${_nx_bash}" "${CMAKE_CURRENT_LIST_DIR}/fetch_ort_headers.sh" "${_nx_fetch_root}"
        RESULT_VARIABLE _nx_rc
        OUTPUT_VARIABLE _nx_out
        ERROR_VARIABLE _nx_err
        TIMEOUT 900)
      file(WRITE "${_nx_fetch_root}.log" "exit: ${_nx_rc}\n--- stdout\n${_nx_out}\n--- stderr\n${_nx_err}\n")
      _nx_ort_dir_with_headers("${_nx_fetch_inc}" _nx_dir)
      if(NOT _nx_rc EQUAL 0 OR NOT _nx_dir)
        set(_nx_dir "")
        string(STRIP "${_nx_err}" _nx_err)
        string(LENGTH "${_nx_err}" _nx_len)
        if(_nx_len GREATER 1500)
          math(EXPR _nx_start "${_nx_len} - 1500")
          string(SUBSTRING "${_nx_err}" ${_nx_start} 1500 _nx_err)
        endif()
        string(APPEND _nx_ort_notes "Fetching Debian's libonnxruntime-dev failed (exit ${_nx_rc}, "
                                    "log ${_nx_fetch_root}.log): ${_nx_err}")
      endif()
    endif()
  endif()
  if(_nx_dir)
    set(NORMEXPORT_ORT_INCLUDE_DIR "${_nx_dir}")
    set(NORMEXPORT_ORT_HEADERS_SOURCE "debian-fetch")
  endif()
endif()

if(NORMEXPORT_ORT_INCLUDE_DIR)
  file(STRINGS "${NORMEXPORT_ORT_INCLUDE_DIR}/onnxruntime_c_api.h" _nx_ver_line
       REGEX "^#define ORT_API_VERSION [0-9]+" LIMIT_COUNT 1)
  string(REGEX REPLACE "^#define ORT_API_VERSION ([0-9]+).*$" "\\1" NORMEXPORT_ORT_API_VERSION "${_nx_ver_line}")
  if(NOT NORMEXPORT_ORT_API_VERSION MATCHES "^[0-9]+$")
    set(NORMEXPORT_ORT_API_VERSION "")
  endif()
  message(STATUS "normexport: ONNX Runtime headers (${NORMEXPORT_ORT_HEADERS_SOURCE}, ORT_API_VERSION "
                 "${NORMEXPORT_ORT_API_VERSION}): ${NORMEXPORT_ORT_INCLUDE_DIR}")
else()
  string(CONCAT NORMEXPORT_ORT_HEADERS_ERROR
      "ONNX Runtime C/C++ headers not found. ${_nx_ort_notes}Set ORT_INCLUDE_DIR to a directory "
      "containing onnxruntime_cxx_api.h (e.g. from an onnxruntime release archive) to build the custom-op library.")
endif()
