// The importable shell of vdm_fast._C. The ops register themselves with the dispatcher from
// static initialisers (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL in each op's sources), so
// importing this module is all Python has to do; no pybind11 is involved.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      NULL,  // doc
      -1,    // size
      NULL,  // methods
  };
  return PyModule_Create(&module_def);
}
