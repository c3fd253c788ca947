# Locates libtorch inside the torch Python package (the PyPI wheel) unless CMAKE_PREFIX_PATH
# already points at a libtorch. Defines the interface target mgm::torch and MGM_HAVE_CUDA.
#
# A CUDA-enabled wheel's TorchConfig needs a CUDA toolkit at configure time. With
# MGM_WITH_CUDA=auto and no toolkit (nvcc) on the machine, we import the CPU libraries of the
# wheel directly instead, so the project still builds and runs on CPU.

if(NOT MGM_PYTHON)
  if(DEFINED ENV{MGM_VENV} AND EXISTS "$ENV{MGM_VENV}/bin/python")
    set(MGM_PYTHON "$ENV{MGM_VENV}/bin/python")
  elseif(EXISTS "$ENV{HOME}/.cache/mgm/venv/bin/python")
    set(MGM_PYTHON "$ENV{HOME}/.cache/mgm/venv/bin/python")
  else()
    find_program(MGM_PYTHON python3)
  endif()
endif()
set(MGM_PYTHON "${MGM_PYTHON}" CACHE FILEPATH "Python with torch (used to find libtorch and by parity tests)")

execute_process(
  COMMAND "${MGM_PYTHON}" -c "import torch,os;print(os.path.dirname(torch.__file__));print(torch.__version__);print(torch.version.cuda or '')"
  OUTPUT_VARIABLE _mgm_torch_info RESULT_VARIABLE _mgm_rc ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _mgm_rc EQUAL 0)
  message(FATAL_ERROR "Cannot import torch with ${MGM_PYTHON}. Run scripts/setup.sh, or pass -DMGM_PYTHON=/path/to/python with torch installed.")
endif()
string(REPLACE "\n" ";" _mgm_torch_info "${_mgm_torch_info}")
list(GET _mgm_torch_info 0 MGM_TORCH_DIR)
list(GET _mgm_torch_info 1 MGM_TORCH_VERSION)
list(LENGTH _mgm_torch_info _n)
set(MGM_TORCH_CUDA "")
if(_n GREATER 2)
  list(GET _mgm_torch_info 2 MGM_TORCH_CUDA)
endif()
message(STATUS "torch ${MGM_TORCH_VERSION} at ${MGM_TORCH_DIR} (CUDA: ${MGM_TORCH_CUDA})")

set(_want_cuda OFF)
if(MGM_TORCH_CUDA AND NOT MGM_WITH_CUDA STREQUAL "OFF")
  find_program(_mgm_nvcc nvcc HINTS /usr/local/cuda/bin ENV CUDA_HOME PATH_SUFFIXES bin)
  if(_mgm_nvcc)
    set(_want_cuda ON)
  elseif(MGM_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "MGM_WITH_CUDA=ON but no nvcc was found (set CUDA_HOME or CUDAToolkit_ROOT)")
  else()
    message(STATUS "torch has CUDA ${MGM_TORCH_CUDA} but no CUDA toolkit is here: building CPU-only")
  endif()
endif()

add_library(mgm_torch INTERFACE)
add_library(mgm::torch ALIAS mgm_torch)
if(_want_cuda)
  get_filename_component(_nvcc_dir "${_mgm_nvcc}" DIRECTORY)
  get_filename_component(_cuda_root "${_nvcc_dir}" DIRECTORY)
  set(CUDAToolkit_ROOT "${_cuda_root}" CACHE PATH "")
  set(CMAKE_CUDA_COMPILER "${_mgm_nvcc}" CACHE FILEPATH "")
  if(NOT TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    # Avoid TorchConfig's GPU auto-detection (it try_runs on the GPU, none here): default to
    # Hopper, the GPU machine's architecture. Override with -DTORCH_CUDA_ARCH_LIST=...
    set(TORCH_CUDA_ARCH_LIST "9.0")
  endif()
  list(APPEND CMAKE_PREFIX_PATH "${MGM_TORCH_DIR}/share/cmake")
  find_package(Torch REQUIRED)
  target_link_libraries(mgm_torch INTERFACE ${TORCH_LIBRARIES})
  # torch_cuda must stay linked even when no symbol of it is referenced, or CUDA cannot start.
  target_link_options(mgm_torch INTERFACE "-Wl,--no-as-needed")
  set(MGM_HAVE_CUDA ON)
else()
  set(_lib "${MGM_TORCH_DIR}/lib")
  foreach(_l torch torch_cpu c10)
    if(NOT EXISTS "${_lib}/lib${_l}.so")
      message(FATAL_ERROR "${_lib}/lib${_l}.so not found: is ${MGM_TORCH_DIR} a torch package?")
    endif()
    target_link_libraries(mgm_torch INTERFACE "${_lib}/lib${_l}.so")
  endforeach()
  target_include_directories(mgm_torch SYSTEM INTERFACE
    "${MGM_TORCH_DIR}/include" "${MGM_TORCH_DIR}/include/torch/csrc/api/include")
  target_compile_definitions(mgm_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=1)
  target_link_options(mgm_torch INTERFACE "-Wl,-rpath,${_lib}")
  set(MGM_HAVE_CUDA OFF)
endif()
target_link_libraries(mgm_torch INTERFACE Threads::Threads)
if(MGM_HAVE_CUDA)
  target_compile_definitions(mgm_torch INTERFACE MGM_HAVE_CUDA=1)
endif()
message(STATUS "MGM_HAVE_CUDA=${MGM_HAVE_CUDA}")
